// The Azure Workbook: in the portal, the tiles Microsoft's ITSMC solution showed, over ServiceDesk_CL and
// ServiceDeskLog_CL (work items created per type, impacted computers, connector status and sync runs, the alert
// rules that created work items, incidents and change requests by state and priority). Its content is
// ../workbook.json; tests/workbook.rs checks every query's columns against the column files in schema/.
//
// Linked to the workspace (sourceId), it is listed in the workspace's Workbooks blade and in Monitor > Workbooks,
// and its queries run against that workspace. The workbook goes in the connector's resource group, whichever
// group the workspace is in.

param displayName string
param location string
param tags object

@description('The Log Analytics workspace the queries read (full resource id).')
param workspaceId string

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // The same name on every deployment, so that a redeploy (deploy.sh deploys twice) updates the workbook.
  name: guid(resourceGroup().id, workspaceId, 'itsmc-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: workspaceId
    // fallbackResourceIds: the workspace the queries run against when the workbook is opened without one.
    serializedData: string(union(loadJsonContent('../workbook.json'), {
      fallbackResourceIds: [
        workspaceId
      ]
    }))
  }
}

output id string = workbook.id
