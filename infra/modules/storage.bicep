// The storage account shared by the Functions host (blobs for keys and the timer's lock, queues) and itsmc
// (its state: claims, links and the outbox in Table Storage). Shared keys are refused: every caller signs in
// with Entra (the app's system identity, the deployer), so there is no account key to leak or rotate.

param name string
param location string
param tags object

@description('Blob containers to create: the Flex deployment container or the Consumption package container.')
param containers array

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    // The portal and CLI then use Entra too, which is the only way in.
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: account
  name: 'default'
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = [for container in containers: {
  parent: blobService
  name: container
  properties: {
    publicAccess: 'None'
  }
}]

output name string = account.name
output id string = account.id
// Ends with '/'.
output blobEndpoint string = account.properties.primaryEndpoints.blob
